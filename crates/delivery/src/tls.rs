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

use relayward_tls::VerifyingError;
use rustls::ClientConfig;

use crate::config::ConfigError;

/// A verifying configuration: public roots plus the PEM certificates in `ca_file`, each of
/// which is also accepted as a pin (the smart host's own self-signed certificate, CA:TRUE or
/// not; see [`relayward_tls::pinned`]). Names are checked either way.
pub fn verifying(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, ConfigError> {
    relayward_tls::verifying(ca_file).map_err(|e| match e {
        VerifyingError::Read { path, source } => ConfigError::Read { path, source },
        VerifyingError::BadCaFile(path) => ConfigError::BadCaFile(path),
        VerifyingError::Tls(e) => ConfigError::Tls(e.to_string()),
    })
}

/// An encrypt-only configuration for opportunistic STARTTLS (shared with the tester).
pub fn opportunistic() -> Result<Arc<ClientConfig>, ConfigError> {
    relayward_tls::encrypt_only_config().map_err(|e| ConfigError::Tls(e.to_string()))
}
