//! JWT signing keys: generation, the public JWK, and encryption at rest.
//!
//! A private key never reaches the store in the clear: it is sealed with ChaCha20-Poly1305
//! under the [`MasterKey`] from configuration, with the key id as associated data (so a
//! sealed key cannot be swapped onto another kid), as `nonce (12 bytes) || ciphertext`.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::SigningKey;
use meridian_core::Timestamp;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::jwt::{ALG_EDDSA, Signer};

/// The 32-byte key that seals signing keys at rest (`MERIDIAN_AUTH_MASTER_KEY`, base64).
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the master key must be 32 bytes of standard base64 (44 characters)")]
    BadMasterKey,
    #[error("signing key {0} cannot be decrypted: wrong master key, or the stored key is damaged")]
    Undecryptable(String),
    #[error("signing key {0} has an unsupported algorithm {1:?}")]
    UnsupportedAlgorithm(String, String),
    #[error("signing key {0} has an invalid public key")]
    BadPublicKey(String),
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Self(k)
    }

    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| KeyError::BadMasterKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadMasterKey)?;
        Ok(Self(bytes))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("ChaCha20-Poly1305 encryption of a short message cannot fail");
        [nonce.as_slice(), &ct].concat()
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 12 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(12);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()
    }
}

/// A signing key as the store keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSigningKey {
    pub kid: String,
    pub alg: String,
    /// `nonce || ciphertext` of the 32-byte Ed25519 seed.
    pub encrypted_private_key: Vec<u8>,
    /// The public JWK, as published in the JWKS.
    pub public_jwk: serde_json::Value,
    pub created_at: Timestamp,
    /// From then on the key signs nothing new.
    pub retire_at: Timestamp,
    /// From then on the key leaves the JWKS: every token it signed has expired.
    pub expire_at: Timestamp,
}

impl std::fmt::Debug for StoredSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .field("retire_at", &self.retire_at)
            .field("expire_at", &self.expire_at)
            .finish_non_exhaustive()
    }
}

impl StoredSigningKey {
    /// The public key, checked to be an Ed25519 `OKP` JWK for this kid.
    pub fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey, KeyError> {
        if self.alg != ALG_EDDSA {
            return Err(KeyError::UnsupportedAlgorithm(
                self.kid.clone(),
                self.alg.clone(),
            ));
        }
        let bad = || KeyError::BadPublicKey(self.kid.clone());
        let x = self.public_jwk["x"].as_str().ok_or_else(bad)?;
        let bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|_| bad())?
            .try_into()
            .map_err(|_| bad())?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
    }

    /// Decrypts the private key into a signer.
    pub fn signer(&self, master: &MasterKey) -> Result<Signer, KeyError> {
        self.verifying_key()?;
        let seed = master
            .open(self.kid.as_bytes(), &self.encrypted_private_key)
            .ok_or_else(|| KeyError::Undecryptable(self.kid.clone()))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| KeyError::Undecryptable(self.kid.clone()))?;
        Ok(Signer::new(self.kid.clone(), SigningKey::from_bytes(&seed)))
    }
}

/// A freshly generated key pair, before it is stored.
pub struct SigningKeyMaterial {
    pub kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for SigningKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyMaterial")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKeyMaterial {
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Self {
            kid: uuid::Uuid::now_v7().simple().to_string(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The public key as a JWK (RFC 8037).
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes()),
            "kid": self.kid,
            "alg": ALG_EDDSA,
            "use": "sig",
        })
    }

    /// The key sealed for the store, valid for signing until `retire_at` and published
    /// until `expire_at`.
    pub fn seal(
        &self,
        master: &MasterKey,
        created_at: Timestamp,
        retire_at: Timestamp,
        expire_at: Timestamp,
    ) -> StoredSigningKey {
        StoredSigningKey {
            kid: self.kid.clone(),
            alg: ALG_EDDSA.to_owned(),
            encrypted_private_key: master.seal(self.kid.as_bytes(), &self.key.to_bytes()),
            public_jwk: self.public_jwk(),
            created_at,
            retire_at,
            expire_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_master_key_and_kid() {
        let master = MasterKey::generate();
        let now = meridian_core::now();
        let material = SigningKeyMaterial::generate();
        let stored = material.seal(&master, now, now, now);
        assert!(
            !stored
                .encrypted_private_key
                .windows(32)
                .any(|w| w == material.key.to_bytes())
        );
        let signer = stored.signer(&master).unwrap();
        assert_eq!(signer.verifying_key(), stored.verifying_key().unwrap());
        assert_eq!(signer.kid(), material.kid);
        assert!(matches!(
            stored.signer(&MasterKey::generate()),
            Err(KeyError::Undecryptable(_))
        ));
        let swapped = StoredSigningKey {
            kid: "other".into(),
            ..stored.clone()
        };
        assert!(swapped.signer(&master).is_err());
    }

    #[test]
    fn master_keys_parse_from_base64() {
        let k = MasterKey::generate();
        assert_eq!(MasterKey::from_base64(&k.to_base64()).unwrap().0, k.0);
        assert_eq!(
            MasterKey::from_base64("c2hvcnQ=").unwrap_err(),
            KeyError::BadMasterKey
        );
        assert_eq!(
            MasterKey::from_base64("not base64!").unwrap_err(),
            KeyError::BadMasterKey
        );
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }
}
