//! TLS client pieces shared by relayward's clients: the encrypt-only configuration, the
//! verifying one (smart host, queue database), and the plain-or-TLS stream a STARTTLS client
//! switches between.
//!
//! Both the delivery agent (opportunistic STARTTLS to MX hosts, RFC 3207 / RFC 7435) and the
//! open-relay tester (which must talk to servers with self-signed, expired or misnamed
//! certificates) need encryption without certificate authentication. That one decision lives
//! here, once: the chain is accepted whatever it is, but the handshake signatures are still
//! verified against the presented certificate, so the handshake itself is sound. Anything that
//! needs authentication (the smart host) uses [`pinned::verifying_config`] instead: public
//! roots, a private CA file, and pinned certificates.
//!
//! [`reply::ReplyReader`] is how both clients read a server's replies: bounded lines, one
//! parser.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub mod pinned;
pub mod reply;

/// The crypto provider of every relayward TLS configuration: ring, named explicitly so no
/// second provider can be picked up by accident.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a verifying configuration could not be built.
#[derive(Debug)]
pub enum VerifyingError {
    /// The CA file could not be read.
    Read {
        path: std::path::PathBuf,
        source: io::Error,
    },
    /// The CA file holds no usable certificate.
    BadCaFile(std::path::PathBuf),
    /// rustls refused the configuration.
    Tls(rustls::Error),
}

impl std::fmt::Display for VerifyingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyingError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            VerifyingError::BadCaFile(path) => {
                write!(f, "no usable certificate in {}", path.display())
            }
            VerifyingError::Tls(e) => write!(f, "TLS setup: {e}"),
        }
    }
}

impl std::error::Error for VerifyingError {}

/// A verifying client configuration: the public web PKI roots plus the PEM certificates in
/// `ca_file` (a private CA), each of which is also accepted as a pin (the peer's own
/// self-signed certificate, CA:TRUE or not; see [`pinned`]); the certificate must match the
/// host name either way. For peers we send a password to, or our mail: the smart host, the
/// queue database.
pub fn verifying(ca_file: Option<&std::path::Path>) -> Result<Arc<ClientConfig>, VerifyingError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let pins = match ca_file {
        Some(path) => add_ca_file(&mut roots, path)?,
        None => Vec::new(),
    };
    pinned::verifying_config(roots, pins).map_err(VerifyingError::Tls)
}

/// Adds the file's certificates to `roots` (those that can be trust anchors) and returns all
/// of them as pins. A file without any certificate is an error.
fn add_ca_file(
    roots: &mut rustls::RootCertStore,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, VerifyingError> {
    use rustls_pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|source| VerifyingError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut pins = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|_| VerifyingError::BadCaFile(path.to_path_buf()))?;
        let _ = roots.add(cert.clone());
        pins.push(cert);
    }
    if pins.is_empty() {
        return Err(VerifyingError::BadCaFile(path.to_path_buf()));
    }
    Ok(pins)
}

/// An encrypt-only client configuration: any certificate chain, verified signatures.
pub fn encrypt_only_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = Arc::new(AnyCertificate {
        algorithms: provider().signature_verification_algorithms,
    });
    config_with_verifier(verifier)
}

/// A client configuration whose certificate check is `verifier`: [`provider`] and rustls's
/// safe protocol versions, no client certificate. Every client configuration with a check of
/// relayward's own (encrypt-only, pinned smart host, DANE) is built here, so they cannot
/// drift apart in provider or protocol versions.
pub fn config_with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts any certificate chain; checks handshake signatures.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client connection, plain or TLS; STARTTLS takes the plain stream back out to wrap it.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, data),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
