//! API key format: `mk_<key id, 32 hex>_<secret, 43 base64url>`. Only a SHA-256 of the
//! secret is stored; the secrets are 256 random bits, so a fast hash is the right tool (a
//! password hash is for low-entropy secrets).

use base64::Engine;
use meridian_core::ApiKeyId;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A freshly made key: the id, the full token to show once, and the hash to store.
#[derive(Debug, Clone)]
pub struct ApiKeySecret {
    pub id: ApiKeyId,
    pub token: String,
    pub hash: String,
}

impl ApiKeySecret {
    pub fn generate() -> Self {
        let id = ApiKeyId::new();
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let hash = hash_secret(&secret);
        let token = format!("mk_{}_{}", id.as_uuid().simple(), secret);
        Self { id, token, hash }
    }
}

/// The hex SHA-256 of a key's secret part.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a presented token into its key id and the hash of its secret; `None` if it is not
/// shaped like a Meridian API key.
pub fn parse_api_key(token: &str) -> Option<(ApiKeyId, String)> {
    let rest = token.strip_prefix("mk_")?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32 || secret.len() != 43 {
        return None;
    }
    let id = uuid::Uuid::try_parse(id).ok()?;
    Some((ApiKeyId::from_uuid(id), hash_secret(secret)))
}

/// Compares two hashes in time independent of where they differ.
pub(crate) fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back() {
        let k = ApiKeySecret::generate();
        let (id, hash) = parse_api_key(&k.token).unwrap();
        assert_eq!(id, k.id);
        assert!(hashes_equal(&hash, &k.hash));
        assert!(parse_api_key("mk_nope").is_none());
        assert!(parse_api_key(&k.token.replace("mk_", "xx_")).is_none());
        let mut tampered = k.token.clone();
        tampered.pop();
        tampered.push('A');
        let (_, h2) = parse_api_key(&tampered).unwrap();
        assert!(!hashes_equal(&h2, &k.hash) || k.token.ends_with('A'));
    }
}
