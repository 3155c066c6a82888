//! The auth service's pure core: who may do what, and how credentials are proven.
//!
//! - [`role`]: the roles, the [`Permission`]s and the matrix [`permits`] that every route
//!   checks; API key scopes are sets of permissions ([`Scopes`]), and a credential's
//!   effective rights are its role's permissions intersected with its scopes.
//! - [`jwt`]: EdDSA (Ed25519) access tokens. The [`Verifier`] pins the algorithm per key id
//!   from the key set, so `alg: none` and HS256-signed-with-the-public-key are refused
//!   before any cryptography runs; it checks `exp`/`nbf`/`iss`/`aud` and remembers tokens it
//!   has verified, so a repeated token costs a hash lookup.
//! - [`keys`]: signing keys, their public JWKs, and their encryption at rest with
//!   ChaCha20-Poly1305 under the configured master key.
//! - [`revocation`]: the in-memory revocation set, consulted on every request.
//! - [`password`]: argon2id hashing; [`throttle`]: failed-login throttling.
//!
//! This crate does no IO: the store persists keys and revocations, the API wires them.

pub mod jwt;
pub mod keys;
pub mod password;
pub mod revocation;
pub mod role;
pub mod throttle;

pub use jwt::{Claims, JwtError, Signer, TokenKind, Verifier, VerifierConfig};
pub use keys::{MasterKey, SigningKeyMaterial, StoredSigningKey};
pub use revocation::{Revocation, RevocationKind, RevocationSet};
pub use role::{Permission, Role, Scopes, permits};
pub use throttle::Throttle;
