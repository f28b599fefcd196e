//! TLS client configurations (rustls 0.23, ring provider).
//!
//! Two kinds, on purpose:
//! - [`verifying`]: the smart host. The webpki roots plus an optional private CA file; the
//!   certificate must match the host name, or we do not send (the password follows).
//! - [`opportunistic`]: MX hosts and routes. RFC 3207/RFC 7435: without DANE or MTA-STS the
//!   sender cannot know the right name, so encryption without authentication beats clear
//!   text. Signatures are still checked so the handshake itself is sound.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::config::ConfigError;

/// A verifying configuration: public roots plus the PEM certificates in `ca_file`.
pub fn verifying(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        add_ca_file(&mut roots, path)?;
    }
    let config = ClientConfig::builder_with_provider(relayward_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), ConfigError> {
    let pem = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| ConfigError::BadCaFile(path.to_path_buf()))?;
        if roots.add(cert).is_ok() {
            added += 1;
        }
    }
    if added == 0 {
        return Err(ConfigError::BadCaFile(path.to_path_buf()));
    }
    Ok(())
}

/// An encrypt-only configuration for opportunistic STARTTLS (shared with the tester).
pub fn opportunistic() -> Result<Arc<ClientConfig>, ConfigError> {
    relayward_tls::encrypt_only_config().map_err(|e| ConfigError::Tls(e.to_string()))
}
