//! Outbound HTTP: the one place Meridian builds the clients it calls other services with
//! (tenant webhooks, the HTTP carrier, the SMS provider, S3-compatible label storage).
//!
//! - TLS is rustls on the `ring` provider (pure Rust; no aws-lc C build). reqwest is built
//!   without a provider of its own, so [`install_crypto_provider`] must run before any
//!   client is built; [`Outbound::builder`] does it, and so does `main`.
//! - Servers are verified against the system's root store plus, optionally, the
//!   certificates of one PEM file (`MERIDIAN_HTTP_CA_FILE`), so a private CA works.
//! - [`guard`] keeps tenant-supplied URLs off loopback, private, link-local and metadata
//!   addresses: a resolver that checks every resolved address at connect time (so DNS
//!   rebinding cannot slip past a check made earlier), and a check of literal addresses.

pub mod guard;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use guard::{AddressGuard, GuardedResolver, is_public};
pub use reqwest::Url;

/// Installs `ring` as the process's rustls crypto provider, once; later calls do nothing.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Why the outbound HTTP settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("cannot read MERIDIAN_HTTP_CA_FILE={path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
}

/// How outbound clients verify servers: the system roots plus the extra CA certificates.
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Outbound {
    extra_roots: Arc<Vec<reqwest::Certificate>>,
    ca_pem: Option<Arc<Vec<u8>>>,
    ca_file: Option<PathBuf>,
}

impl Outbound {
    /// The system roots only.
    pub fn system() -> Self {
        Self::default()
    }

    /// The system roots plus every certificate in the PEM file at `path`. A file that
    /// cannot be read, or holds no certificate, is an error.
    pub fn with_ca_file(path: &Path) -> Result<Self, OutboundError> {
        let err = |reason: String| OutboundError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        Self::with_ca_pem(&pem)
            .map(|o| Self {
                ca_file: Some(path.to_owned()),
                ..o
            })
            .map_err(|e| match e {
                OutboundError::CaFile { reason, .. } => err(reason),
            })
    }

    /// The system roots plus every certificate in `pem`.
    pub fn with_ca_pem(pem: &[u8]) -> Result<Self, OutboundError> {
        let err = |reason: String| OutboundError::CaFile {
            path: PathBuf::new(),
            reason,
        };
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in it".into()));
        }
        Ok(Self {
            extra_roots: Arc::new(certs),
            ca_pem: Some(Arc::new(pem.to_vec())),
            ca_file: None,
        })
    }

    /// The CA file in use, if any.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The extra CA certificates as PEM, for clients built elsewhere (the S3 client).
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref().map(Vec::as_slice)
    }

    /// A client builder that speaks https with these roots. Callers add their timeouts,
    /// redirect policy and user agent.
    pub fn builder(&self) -> reqwest::ClientBuilder {
        install_crypto_provider();
        reqwest::Client::builder().tls_certs_merge(self.extra_roots.iter().cloned())
    }

    /// As [`Outbound::builder`], for URLs a tenant supplied: unless `guard` allows private
    /// addresses, every address a name resolves to is checked at connect time.
    pub fn guarded_builder(&self, guard: AddressGuard) -> reqwest::ClientBuilder {
        let builder = self.builder();
        if guard.allow_private {
            builder
        } else {
            builder.dns_resolver(Arc::new(GuardedResolver))
        }
    }
}

#[cfg(feature = "test-support")]
pub mod test_support;
