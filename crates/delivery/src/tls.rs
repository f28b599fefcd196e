//! TLS client configurations (rustls 0.23, ring provider).
//!
//! Two kinds, on purpose:
//! - [`verifying`]: the smart host. The webpki roots plus an optional private CA file, whose
//!   certificates are also pins; the certificate must match the host name, or we do not send
//!   (the password follows).
//! - [`opportunistic`]: MX hosts and routes. RFC 3207/RFC 7435: without DANE or MTA-STS the
//!   sender cannot know the right name, so encryption without authentication beats clear
//!   text. Signatures are still checked so the handshake itself is sound.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::config::ConfigError;

/// A verifying configuration: public roots plus the PEM certificates in `ca_file`, each of
/// which is also accepted as a pin (the smart host's own self-signed certificate, CA:TRUE or
/// not; see [`relayward_tls::pinned`]). Names are checked either way.
pub fn verifying(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let pins = match ca_file {
        Some(path) => add_ca_file(&mut roots, path)?,
        None => Vec::new(),
    };
    relayward_tls::pinned::verifying_config(roots, pins)
        .map_err(|e| ConfigError::Tls(e.to_string()))
}

/// Adds the file's certificates to `roots` (those that can be trust anchors) and returns all
/// of them as pins. A file without any certificate is an error.
fn add_ca_file(
    roots: &mut RootCertStore,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut pins = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| ConfigError::BadCaFile(path.to_path_buf()))?;
        let _ = roots.add(cert.clone());
        pins.push(cert);
    }
    if pins.is_empty() {
        return Err(ConfigError::BadCaFile(path.to_path_buf()));
    }
    Ok(pins)
}

/// An encrypt-only configuration for opportunistic STARTTLS (shared with the tester).
pub fn opportunistic() -> Result<Arc<ClientConfig>, ConfigError> {
    relayward_tls::encrypt_only_config().map_err(|e| ConfigError::Tls(e.to_string()))
}
