//! Webhook signing secrets at rest: sealed with the deployment's master key
//! (`MERIDIAN_AUTH_MASTER_KEY` or the data directory's key file), by the same
//! ChaCha20-Poly1305 code that seals the JWT signing keys (`meridian_auth::MasterKey`).
//!
//! A sealed secret is stored as `sealed:v1:` + base64(nonce || ciphertext), with the
//! tenant id as associated data, so a sealed secret copied onto another tenant's endpoint
//! does not open. A value without the marker is a secret stored before sealing existed; it
//! is used as it is, and sealed when it is next rotated.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use meridian_auth::MasterKey;
use meridian_core::TenantId;

/// Marks a sealed secret.
pub const SEALED_PREFIX: &str = "sealed:v1:";

/// Why a stored secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the webhook secret is sealed but no master key is configured to open it")]
    NoKey,
    #[error(
        "the webhook secret cannot be opened: wrong master key, or the stored value is damaged"
    )]
    Undecryptable,
}

/// Seals and opens webhook secrets under the master key.
#[derive(Clone)]
pub struct SecretSealer {
    key: MasterKey,
}

impl std::fmt::Debug for SecretSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretSealer(..)")
    }
}

fn aad(tenant: TenantId) -> Vec<u8> {
    format!("meridian:webhook-secret:{tenant}").into_bytes()
}

impl SecretSealer {
    pub fn new(key: MasterKey) -> Self {
        Self { key }
    }

    /// What to store for `secret`.
    pub fn seal(&self, tenant: TenantId, secret: &str) -> String {
        let sealed = self.key.seal(&aad(tenant), secret.as_bytes());
        format!("{SEALED_PREFIX}{}", STANDARD.encode(sealed))
    }

    /// The secret a stored value holds.
    pub fn open(&self, tenant: TenantId, stored: &str) -> Result<String, SecretError> {
        open(Some(self), tenant, stored)
    }
}

/// Whether a stored value is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// The secret a stored value holds: a value in the clear (stored before sealing) as it is,
/// a sealed one opened with `sealer`.
pub fn open(
    sealer: Option<&SecretSealer>,
    tenant: TenantId,
    stored: &str,
) -> Result<String, SecretError> {
    let Some(b64) = stored.strip_prefix(SEALED_PREFIX) else {
        return Ok(stored.to_owned());
    };
    let sealer = sealer.ok_or(SecretError::NoKey)?;
    let sealed = STANDARD
        .decode(b64)
        .map_err(|_| SecretError::Undecryptable)?;
    let plain = sealer
        .key
        .open(&aad(tenant), &sealed)
        .ok_or(SecretError::Undecryptable)?;
    String::from_utf8(plain).map_err(|_| SecretError::Undecryptable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_for_their_tenant_and_key() {
        let sealer = SecretSealer::new(MasterKey::generate());
        let (t, other) = (TenantId::new(), TenantId::new());
        let stored = sealer.seal(t, "whsec_c2VjcmV0");
        assert!(is_sealed(&stored));
        assert!(!stored.contains("whsec_c2VjcmV0"));
        assert_ne!(
            stored,
            sealer.seal(t, "whsec_c2VjcmV0"),
            "a fresh nonce each time"
        );
        assert_eq!(sealer.open(t, &stored).unwrap(), "whsec_c2VjcmV0");
        assert_eq!(sealer.open(other, &stored), Err(SecretError::Undecryptable));
        let stranger = SecretSealer::new(MasterKey::generate());
        assert_eq!(stranger.open(t, &stored), Err(SecretError::Undecryptable));
        assert_eq!(open(None, t, &stored), Err(SecretError::NoKey));
        // A secret stored in the clear before sealing still works, with or without a key.
        assert_eq!(sealer.open(t, "whsec_b2xk").unwrap(), "whsec_b2xk");
        assert_eq!(open(None, t, "whsec_b2xk").unwrap(), "whsec_b2xk");
        let mut damaged = stored.clone();
        damaged.pop();
        assert!(sealer.open(t, &damaged).is_err());
    }
}
