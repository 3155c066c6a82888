//! EdDSA (Ed25519) JSON Web Tokens: issuing and verifying Meridian access tokens.
//!
//! The verifier trusts nothing in the header but the key id: each key id in the key set is
//! pinned to the one algorithm it was made for (`EdDSA`), so a token that says `none`,
//! `HS256` (the classic "sign with the public key as an HMAC secret" confusion) or `RS256`
//! is refused before any signature check, and an unknown `kid` is refused outright.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::role::Role;

/// The only algorithm Meridian signs with.
pub const ALG_EDDSA: &str = "EdDSA";

/// Who a token was issued to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A person, through the password (or refresh token) grant: `sub` is the user id.
    User,
    /// A machine client, through client credentials: `sub` is the API key id.
    ApiKey,
}

/// The claims of a Meridian access token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user id or API key id.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    /// Unique token id: what a revocation of this one token names.
    pub jti: String,
    /// The tenant the token acts for.
    pub tid: String,
    pub role: Role,
    /// Space-separated scopes (RFC 8693 §4.2); the role still bounds them.
    pub scope: String,
    /// The tenant's plan when the token was issued (rate limits read it).
    pub plan: String,
    pub kind: TokenKind,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    /// Critical extensions we would have to understand: we understand none.
    #[serde(default, skip_serializing)]
    crit: Option<serde_json::Value>,
}

/// Why a token was refused. The API answers every one of these with the same `401`; the
/// variant goes to the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm {0:?} is not the one its key is pinned to")]
    AlgorithmMismatch(String),
    #[error("the token names no key, or a key that is not in the key set")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by someone else")]
    WrongIssuer,
    #[error("the token is meant for another audience")]
    WrongAudience,
}

/// Signs tokens with one key.
pub struct Signer {
    kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(kid: impl Into<String>, key: SigningKey) -> Self {
        Self {
            kid: kid.into(),
            key,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The compact serialization of `claims`, signed.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: ALG_EDDSA.to_owned(),
            kid: Some(self.kid.clone()),
            typ: Some("JWT".to_owned()),
            crit: None,
        };
        let header =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serializes"));
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signing_input = format!("{header}.{claims}");
        let signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }
}

/// What a token must say to be accepted.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: i64,
    /// Verified tokens remembered at most; past it the memory is cleared of expired
    /// entries, then emptied.
    pub cache_capacity: usize,
}

/// Verifies tokens against a key set, remembering the ones it has verified until they
/// expire. Revocation is not its business: callers check the revocation set on every
/// request, cached or not.
pub struct Verifier {
    config: VerifierConfig,
    keys: RwLock<HashMap<String, PinnedKey>>,
    verified: RwLock<HashMap<Box<str>, Arc<Claims>>>,
}

#[derive(Clone)]
struct PinnedKey {
    alg: &'static str,
    key: VerifyingKey,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.config)
            .field("kids", &self.keys.read().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(config: VerifierConfig) -> Self {
        Self {
            config,
            keys: RwLock::new(HashMap::new()),
            verified: RwLock::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Replaces the key set: EdDSA keys by kid. Tokens of a key that left the set stop
    /// verifying at once, cached or not.
    pub fn set_keys(&self, keys: impl IntoIterator<Item = (String, VerifyingKey)>) {
        let keys: HashMap<String, PinnedKey> = keys
            .into_iter()
            .map(|(kid, key)| {
                (
                    kid,
                    PinnedKey {
                        alg: ALG_EDDSA,
                        key,
                    },
                )
            })
            .collect();
        let mut current = self.keys.write();
        let removed = current.keys().any(|k| !keys.contains_key(k));
        *current = keys;
        drop(current);
        if removed {
            self.verified.write().clear();
        }
    }

    pub fn kids(&self) -> Vec<String> {
        self.keys.read().keys().cloned().collect()
    }

    /// The token's claims if it is signed by a key of the set with that key's algorithm,
    /// issued by us, for our audience, and valid at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<Claims>, JwtError> {
        if let Some(claims) = self.verified.read().get(token) {
            self.check_times(claims, now)?;
            return Ok(claims.clone());
        }
        let claims = Arc::new(self.verify_uncached(token, now)?);
        let mut verified = self.verified.write();
        if verified.len() >= self.config.cache_capacity {
            let leeway = self.config.leeway_secs;
            verified.retain(|_, c| c.exp + leeway > now);
            if verified.len() >= self.config.cache_capacity {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str, now: i64) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Header = decode_json(header_b64)?;
        if header.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        let kid = header.kid.as_deref().ok_or(JwtError::UnknownKey)?;
        let pinned = self
            .keys
            .read()
            .get(kid)
            .cloned()
            .ok_or(JwtError::UnknownKey)?;
        // The header's `alg` must equal the key's pinned algorithm; it never chooses one.
        if header.alg != pinned.alg {
            return Err(JwtError::AlgorithmMismatch(header.alg));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| JwtError::Malformed)?;
        let signature = Signature::from_slice(&signature).map_err(|_| JwtError::BadSignature)?;
        let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
        pinned
            .key
            .verify_strict(signing_input.as_bytes(), &signature)
            .map_err(|_| JwtError::BadSignature)?;
        let claims: Claims = decode_json(claims_b64)?;
        if claims.iss != self.config.issuer {
            return Err(JwtError::WrongIssuer);
        }
        if claims.aud != self.config.audience {
            return Err(JwtError::WrongAudience);
        }
        self.check_times(&claims, now)?;
        Ok(claims)
    }

    fn check_times(&self, claims: &Claims, now: i64) -> Result<(), JwtError> {
        let leeway = self.config.leeway_secs;
        if now >= claims.exp + leeway {
            return Err(JwtError::Expired);
        }
        if now + leeway < claims.nbf {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(b64: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn claims() -> Claims {
        Claims {
            iss: "https://meridian.test".into(),
            sub: "user-1".into(),
            aud: "meridian".into(),
            exp: NOW + 900,
            nbf: NOW,
            iat: NOW,
            jti: "jti-1".into(),
            tid: "tenant-1".into(),
            role: Role::Member,
            scope: "orders:read".into(),
            plan: "standard".into(),
            kind: TokenKind::User,
        }
    }

    fn verifier() -> Verifier {
        let v = Verifier::new(VerifierConfig {
            issuer: "https://meridian.test".into(),
            audience: "meridian".into(),
            leeway_secs: 30,
            cache_capacity: 4,
        });
        v.set_keys([("k1".to_owned(), key(1).verifying_key())]);
        v
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let ih = Sha256::digest([inner.as_slice(), msg].concat());
        Sha256::digest([outer.as_slice(), ih.as_slice()].concat()).to_vec()
    }

    #[test]
    fn a_signed_token_verifies_and_is_remembered() {
        let v = verifier();
        let token = Signer::new("k1", key(1)).sign(&claims());
        assert_eq!(*v.verify(&token, NOW).unwrap(), claims());
        assert_eq!(*v.verify(&token, NOW + 1).unwrap(), claims());
        // Remembered, but still checked against the clock.
        assert_eq!(v.verify(&token, NOW + 2000), Err(JwtError::Expired));
    }

    #[test]
    fn forged_expired_early_and_foreign_tokens_are_refused() {
        let v = verifier();
        let signer = Signer::new("k1", key(1));
        let cases: Vec<(String, JwtError)> = vec![
            (
                Signer::new("k1", key(2)).sign(&claims()),
                JwtError::BadSignature,
            ),
            (
                Signer::new("k9", key(1)).sign(&claims()),
                JwtError::UnknownKey,
            ),
            (
                signer.sign(&Claims {
                    exp: NOW - 31,
                    ..claims()
                }),
                JwtError::Expired,
            ),
            (
                signer.sign(&Claims {
                    nbf: NOW + 31,
                    ..claims()
                }),
                JwtError::NotYetValid,
            ),
            (
                signer.sign(&Claims {
                    aud: "other".into(),
                    ..claims()
                }),
                JwtError::WrongAudience,
            ),
            (
                signer.sign(&Claims {
                    iss: "https://evil".into(),
                    ..claims()
                }),
                JwtError::WrongIssuer,
            ),
            ("a.b".into(), JwtError::Malformed),
            ("a.b.c.d".into(), JwtError::Malformed),
        ];
        for (token, expected) in cases {
            assert_eq!(v.verify(&token, NOW), Err(expected.clone()), "{expected:?}");
        }
        // Within the leeway, still valid.
        let t = signer.sign(&Claims {
            exp: NOW - 29,
            ..claims()
        });
        assert!(v.verify(&t, NOW).is_ok());
    }

    #[test]
    fn a_tampered_payload_is_refused() {
        let v = verifier();
        let token = Signer::new("k1", key(1)).sign(&claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut c = serde_json::to_value(claims()).unwrap();
        c["role"] = "owner".into();
        parts[1] = b64(&c);
        assert_eq!(v.verify(&parts.join("."), NOW), Err(JwtError::BadSignature));
    }

    #[test]
    fn alg_none_and_key_confusion_are_refused() {
        let v = verifier();
        let payload = b64(&serde_json::to_value(claims()).unwrap());
        // alg=none, with and without a kid, with an empty signature.
        for header in [
            serde_json::json!({"alg": "none", "kid": "k1"}),
            serde_json::json!({"alg": "none"}),
            serde_json::json!({"alg": "None", "kid": "k1", "typ": "JWT"}),
        ] {
            let token = format!("{}.{payload}.", b64(&header));
            assert!(v.verify(&token, NOW).is_err(), "{header}");
        }
        // HS256 keyed with the public key (raw bytes and its JWK `x`).
        let public = key(1).verifying_key().to_bytes();
        for secret in [public.to_vec(), URL_SAFE_NO_PAD.encode(public).into_bytes()] {
            let header = b64(&serde_json::json!({"alg": "HS256", "kid": "k1", "typ": "JWT"}));
            let input = format!("{header}.{payload}");
            let mac = hmac_sha256(&secret, input.as_bytes());
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac));
            assert_eq!(
                v.verify(&token, NOW),
                Err(JwtError::AlgorithmMismatch("HS256".into()))
            );
        }
        // RS256 / ES256 headers on an EdDSA key.
        let good = Signer::new("k1", key(1)).sign(&claims());
        let sig = good.rsplit('.').next().unwrap();
        for alg in ["RS256", "ES256", "eddsa"] {
            let header = b64(&serde_json::json!({"alg": alg, "kid": "k1"}));
            let token = format!("{header}.{payload}.{sig}");
            assert_eq!(
                v.verify(&token, NOW),
                Err(JwtError::AlgorithmMismatch(alg.into()))
            );
        }
        // Critical header extensions are not understood, hence refused.
        let header = b64(&serde_json::json!({"alg": "EdDSA", "kid": "k1", "crit": ["exp"]}));
        assert_eq!(
            v.verify(&format!("{header}.{payload}.{sig}"), NOW),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn removing_a_key_forgets_its_tokens() {
        let v = verifier();
        let token = Signer::new("k1", key(1)).sign(&claims());
        assert!(v.verify(&token, NOW).is_ok());
        v.set_keys([("k2".to_owned(), key(2).verifying_key())]);
        assert_eq!(v.verify(&token, NOW), Err(JwtError::UnknownKey));
    }

    #[test]
    fn the_memory_stays_bounded() {
        let v = verifier();
        let signer = Signer::new("k1", key(1));
        for i in 0..10 {
            let t = signer.sign(&Claims {
                jti: format!("j{i}"),
                ..claims()
            });
            assert!(v.verify(&t, NOW).is_ok());
            assert!(v.verified.read().len() <= 4);
        }
    }
}
